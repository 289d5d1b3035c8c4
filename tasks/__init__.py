"""Evaluation tasks: one module per task (protocol + metric), nothing model-specific.

Each module registers ``run(encoder, data, cfg, ctx) -> TaskResult`` with
:func:`tips_eval.task_api.register_task`; the runner imports them lazily.
"""

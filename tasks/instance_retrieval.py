"""Fine-grained / instance retrieval with global embeddings (UnED protocol).

Each domain's queries search one index merged over all domains; a neighbour is
correct when it has the query's label AND domain. Similarity: dot product of
L2-normalised global embeddings (cosine). A query that is itself in the index
(domains whose index is the query split) never retrieves itself: its own index
entry is excluded and not counted as a positive. Reported per domain and as the
mean over domains: R@1 (headline, mean over domains) and mMP@5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tips_eval.errors import DataError
from tips_eval.metrics import instance_retrieval_metrics
from tips_eval.task_api import TaskConfig, TaskResult, register_task, resolve_token

from ._common import global_spec, require_nonempty, vectors


@dataclass
class InstanceRetrievalConfig(TaskConfig):
    k: int = 5  # mMP@k
    label: str = "label"  # target key holding the instance/class id ("instance" for the synthetic views)


def _labels_domains(ds, key: str):
    """(labels: list of int or list-of-int per item, domains (N,), domain names by id)."""
    if key == "label" and hasattr(ds, "label_values") and hasattr(ds, "domains"):
        vals, offs = ds.label_values, ds.label_offsets
        labels = [vals[offs[i]:offs[i + 1]].tolist() for i in range(len(ds))]
        from tips_eval.data.uned import DOMAINS  # domain ids index the global UnED domain list

        return labels, np.asarray(ds.domains, dtype=np.int64), dict(enumerate(DOMAINS))
    labels, domains, names = [], [], {}
    for i in range(len(ds)):
        t = ds.target(i)
        if key not in t and "labels" not in t:
            raise DataError(f"{ds.name} {ds.split}: item {i} has no {key!r} target")
        labels.append(t["labels"] if key == "label" and "labels" in t else t[key])
        d = int(t.get("domain", 0))
        domains.append(d)
        names.setdefault(d, t.get("domain_name", str(d)))
    return labels, np.asarray(domains, dtype=np.int64), names


def _single(labels) -> np.ndarray:
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        if isinstance(lab, (list, tuple, np.ndarray)):
            if len(lab) != 1:
                raise DataError(f"index item {i} has {len(lab)} labels; index items need exactly one")
            lab = lab[0]
        out[i] = int(lab)
    return out


@register_task("instance_retrieval", InstanceRetrievalConfig, roles=("query", "index"),
               description="instance / fine-grained retrieval (UnED protocol)")
def run(encoder, data, cfg: InstanceRetrievalConfig, ctx) -> TaskResult:
    query, index = data["query"], data["index"]
    require_nonempty(query, "query")
    require_nonempty(index, "index")
    spec = global_spec(encoder, cfg)
    fq, fi = ctx.features(encoder, query, spec), ctx.features(encoder, index, spec)
    (xq, gq), (xi, gi) = vectors(fq, encoder, cfg.token), vectors(fi, encoder, cfg.token)
    ql, qd, names = _labels_domains(query, cfg.label)
    il, idom, inames = _labels_domains(index, cfg.label)
    names = {**inames, **names}
    position = {index.image_key(j): j for j in range(len(index))}
    self_pos = np.asarray([position.get(query.image_key(i), -1) for i in range(len(query))], dtype=np.int64)
    # drop unreadable images: renumber the index, forget self positions that went away
    new_pos = np.where(gi, np.cumsum(gi) - 1, -1)
    self_pos = np.where(self_pos >= 0, new_pos[np.maximum(self_pos, 0)], -1)[gq]
    qx, qlab, qdom = xq[gq], [ql[i] for i in np.flatnonzero(gq)], qd[gq]
    ix, ilab, idm = xi[gi], _single([il[j] for j in np.flatnonzero(gi)]), idom[gi]
    metrics, per_domain = {}, {}
    for d in np.unique(qdom):
        sel = qdom == d
        res = instance_retrieval_metrics(qx[sel], [qlab[i] for i in np.flatnonzero(sel)], ix, ilab, k=cfg.k,
                                         query_domain=qdom[sel], index_domain=idm, self_index=self_pos[sel],
                                         device=ctx.torch_device())
        name = str(names.get(int(d), d))
        per_domain[name] = res
        metrics[f"{name}/R@1"], metrics[f"{name}/mMP@{cfg.k}"] = res["R@1"], res[f"mMP@{cfg.k}"]
    metrics["R@1"] = float(np.mean([r["R@1"] for r in per_domain.values()]))
    metrics[f"mMP@{cfg.k}"] = float(np.mean([r[f"mMP@{cfg.k}"] for r in per_domain.values()]))
    return TaskResult(
        metrics, "R@1",
        protocol={"token": resolve_token(encoder, cfg.token), "similarity": "dot product of L2-normalised",
                  "hit": "same label and same domain", "index": "merged over domains",
                  "self_match": "excluded", "mean": "unweighted over domains", "preprocess": spec.preprocess.to_dict()},
        info={"n_queries": int(gq.sum()), "n_index": int(gi.sum()), "domains": list(per_domain),
              "queries_in_index": int((self_pos >= 0).sum()), "bad_images": int((~gq).sum() + (~gi).sum())})

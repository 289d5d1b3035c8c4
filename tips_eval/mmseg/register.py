"""Import target for mmengine configs: registers ``TipsEvalBackbone`` in mmseg's registry.

``custom_imports = dict(imports=["tips_eval.mmseg.register"], allow_failed_imports=False)``
"""

from tips_eval.mmseg import import_mmseg

import_mmseg(init_default_scope=False)

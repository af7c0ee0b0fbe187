"""The error for a configuration whose reported epsilon would not be a true upper bound.

Defined here, below both places that detect such a configuration: the objectives (e.g.
:meth:`fedssl.ssl_core.objectives.group_infonce.GroupInfoNCE.take_groups`, a group loss
evaluated twice in one DP-SGD step) and the DP-SGD engine, which re-exports it
(:mod:`fedssl.privacy.dp_sgd.engine`, :mod:`fedssl.privacy.dp_sgd.opacus_engine`); ``ssl_core``
never imports
``privacy`` (the objective comes before DP-SGD in the data flow, see ``docs/architecture.md``).
"""

from __future__ import annotations


class DPSoundnessError(ValueError):
    """Raised when a configuration would make the reported epsilon not a true upper bound."""

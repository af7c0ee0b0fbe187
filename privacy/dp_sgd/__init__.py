"""DP-SGD on a client: per-record clipping over all views of a record, Gaussian noise.

:mod:`~fedssl.privacy.dp_sgd.engine` picks the engine for a model and states the mechanism;
:mod:`~fedssl.privacy.dp_sgd.opacus_engine` runs Opacus's hooks mode (and holds the DP
contract of the objectives: :func:`~fedssl.privacy.dp_sgd.opacus_engine.clip_sensitivity`);
:mod:`~fedssl.privacy.dp_sgd.fast_clip` is the exact one-backward book-keeping engine, with
its per-layer rules (:mod:`~fedssl.privacy.dp_sgd.fast_clip_rules`,
:mod:`~fedssl.privacy.dp_sgd.ws_rules`) and clipper
(:mod:`~fedssl.privacy.dp_sgd.fast_clipper`); :mod:`~fedssl.privacy.dp_sgd.group_clip`
clips groups of records as one unit (``infonce-group``, sensitivity 2C).
"""

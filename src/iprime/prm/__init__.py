"""The implicit PRM as a tool: token/step scoring, an HTML view, offline training, and the
metadata (beta, reference, step delimiter) saved beside a PRM. Reranking samples with a PRM
is evaluation: :mod:`iprime.eval.rerank`.

Attributes are imported on first use (PEP 562), so ``iprime.prm.commands`` (the CLI) can be
imported without loading torch.
"""

from iprime._lazy import lazy_getattr

_EXPORTS = {
    "EncodedResponse": "scoring",
    "ImplicitPRM": "scoring",
    "ResponseScore": "scoring",
    "collate_responses": "scoring",
    "encode_response": "scoring",
    "render_html": "html",
    "reward_colour": "html",
    "OfflinePRMConfig": "offline",
    "build_pairs": "offline",
    "evaluate_prm_loss": "offline",
    "load_labelled_rows": "offline",
    "train_prm_offline": "offline",
    "DEFAULT_BETA": "metadata",
    "DEFAULT_STEP_DELIMITER": "metadata",
    "PRMMetadata": "metadata",
    "load_prm_metadata": "metadata",
    "resolve_prm_settings": "metadata",
    "save_prm_metadata": "metadata",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)

"""The implicit PRM as a tool: token/step scoring, an HTML view, offline training, reranking.

Attributes are imported on first use (PEP 562), so ``iprime.prm.commands`` (the CLI) can be
imported without loading torch.
"""

from importlib import import_module

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
    "group_rows": "rerank",
    "rerank_groups": "rerank",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

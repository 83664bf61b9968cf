"""workbench: generative e-commerce search with semantic cluster IDs (CQ-SID) and EG-GRPO."""

__version__ = "0.1.0"

from workbench.workspace import Workspace  # noqa: E402

__all__ = ["Workspace", "__version__"]

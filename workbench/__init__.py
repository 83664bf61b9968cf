"""workbench: generative e-commerce search with semantic cluster IDs (CQ-SID) and EG-GRPO."""

from importlib.metadata import version

from workbench.workspace import Workspace

__version__ = version("workbench")  # pyproject.toml's

__all__ = ["Workspace", "__version__"]

"""Files of the repository, found from this file rather than the working directory (pytest may run from anywhere)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

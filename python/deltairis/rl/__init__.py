"""RL pieces: λ-returns, two-hot/symlog, imagination rollout."""

from deltairis.rl.returns import lambda_returns
from deltairis.rl.twohot import symexp, symlog, two_hot

__all__ = ["lambda_returns", "symexp", "symlog", "two_hot"]

"""deltairis.envs."""

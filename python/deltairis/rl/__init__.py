"""deltairis.rl."""

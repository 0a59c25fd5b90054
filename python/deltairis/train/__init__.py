"""deltairis.train."""

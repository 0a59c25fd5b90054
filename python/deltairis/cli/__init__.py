"""deltairis.cli."""

"""deltairis.models."""

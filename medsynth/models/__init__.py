"""medsynth.models."""

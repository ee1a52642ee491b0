"""medsynth.data."""

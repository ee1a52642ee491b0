"""medsynth.io."""

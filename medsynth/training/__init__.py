"""medsynth.training."""

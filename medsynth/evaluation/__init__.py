"""medsynth.evaluation."""

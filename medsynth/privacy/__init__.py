"""medsynth.privacy."""

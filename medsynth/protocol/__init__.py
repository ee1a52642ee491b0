"""medsynth.protocol."""

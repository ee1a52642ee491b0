"""medsynth.sampling."""

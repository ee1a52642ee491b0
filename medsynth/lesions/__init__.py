"""Lesion insertion: mask proposals, placement regions and compositing (geometry only, no model)."""

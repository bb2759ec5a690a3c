"""Domain code shared by every handin component."""

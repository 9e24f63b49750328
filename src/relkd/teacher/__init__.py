"""The MPCoT teacher: perspectives, generation, strict parsing, selection of SFT data and preference pairs, training."""

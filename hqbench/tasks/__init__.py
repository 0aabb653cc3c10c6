"""LightningModules, one per task config (classification, detection)."""

"""Engines that run a study's steps on a cluster: Slurm, and Kubernetes through MLflow Projects."""

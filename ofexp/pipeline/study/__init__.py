"""The study: its plan, its local run, its progress, its report and its export."""

"""Export tasks: plan a job, run one chunk, re-queue stale chunks."""

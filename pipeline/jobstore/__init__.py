"""The job store and what else a home keeps between runs: jobs and their queue, liveness, the dashboard's preferences."""

"""The job's lifecycle: the engine running a job, its reporter, tracker, run control, embedding budget, instruments and watch feed."""

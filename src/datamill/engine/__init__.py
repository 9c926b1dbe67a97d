"""The engine: task keys and the planner (pure), the scheduler and run state (recorded in the database)."""

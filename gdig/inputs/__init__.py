"""What comes in: data files read into records and examples, models and where they come from."""

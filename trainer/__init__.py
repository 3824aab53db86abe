"""What runs inside one Ray Train worker: strategy, user model and data, exact BackupAndRestore."""

"""RouteLens backends package."""

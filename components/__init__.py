"""RouteLens components package."""

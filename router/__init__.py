"""RouteLens router package."""

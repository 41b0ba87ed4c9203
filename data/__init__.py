"""RouteLens data package."""

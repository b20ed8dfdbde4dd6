"""The worker side: everything that needs torch. Imports app's data layer, never the reverse."""

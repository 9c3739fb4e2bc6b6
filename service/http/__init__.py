"""The daemon's HTTP layer: the aiohttp app, middleware, route groups and OpenAPI."""

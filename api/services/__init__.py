"""What the service does, as functions that the JSON routes (``api.routes``) and the web pages (``api.web``)
both call: exhibits, candidates, reviews, hits, jobs, keys, series, exports, audit log, status. No HTTP here:
a refusal is an :class:`api.errors.ServiceError` (status + detail) that the routes let through and the pages
turn into their error page."""

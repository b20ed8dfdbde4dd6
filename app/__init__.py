"""ranklab: the web application and the data layer. Never imports torch."""

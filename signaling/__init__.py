"""voicepeer's signaling server: aiohttp offer/answer, health, metrics and the web pages."""

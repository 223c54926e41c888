"""Platform adapters. Each only translates: platform event -> core request, core message -> platform."""

"""Security at the edge: API keys, member tokens, roles and policy, quotas, TLS, interceptor."""

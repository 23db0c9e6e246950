/**
 * The seam between who is calling and what they may do. Routes only see a Principal; how it is
 * derived from the request (a fixed development tenant, or a verified bearer token) is the
 * Authenticator's business.
 */
export interface Principal {
  tenantId: string;
  canRead: boolean;
  canWrite: boolean;
}

export interface Authenticator {
  /** Resolves the caller, or throws a GraphError (401/403/503). */
  authenticate(authorization: string | undefined): Promise<Principal>;
}

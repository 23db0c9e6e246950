import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApiContext, type ApiContext } from './support/context.js';

let ctx: ApiContext;
beforeEach(async () => {
  ctx = await createApiContext();
});
afterEach(async () => {
  await ctx.close();
});

const CONNECTIONS = '/v1.0/external/connections';

describe('smoke', () => {
  it('works', async () => {
    let r = await ctx.post(CONNECTIONS, { id: 'contosohr', name: 'Contoso HR' });
    console.log(r.status, r.headers.get('location'), await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr');
    console.log(r.status, await r.text());
    r = await ctx.request(CONNECTIONS);
    console.log(r.status, await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr/schema', { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ baseType: 'microsoft.graph.externalItem', properties: [{ name: 'title', type: 'string' }] }) });
    console.log(r.status, [...r.headers], await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr/schema');
    console.log(r.status, await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr/schema', { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ baseType: 'microsoft.graph.externalItem', properties: [{ name: 'title', type: 'string' }] }) });
    console.log(r.status, await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr', { method: 'DELETE' });
    console.log(r.status, [...r.headers], await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr/operations');
    console.log(r.status, await r.text());
    r = await ctx.request(CONNECTIONS + '/contosohr', { method: 'PUT' });
    console.log(r.status, await r.text());
    expect(1).toBe(1);
  });
});

/** Whether `url` answers 200 within a second (a readiness probe); any failure is "no". Shared
 *  by the tests and the bench, which wait for the service's /readyz the same way. */
export async function answersOk(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await response.body?.cancel();
    return response.status === 200;
  } catch {
    return false;
  }
}

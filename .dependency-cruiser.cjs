/**
 * How the modules may depend on each other, checked by `npm run lint` (dependency-cruiser, with
 * type-only imports counted: a cycle through shared types is still a cycle to read around).
 */
module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', comment: 'Modules import in one direction.', from: {}, to: { circular: true } },
    {
      name: 'api-and-worker-apart',
      severity: 'error',
      comment: 'api and worker import shared, never each other.',
      from: { path: '^src/(api|worker)/' },
      to: { path: '^src/(api|worker)/', pathNot: '^src/$1/' },
    },
    {
      name: 'shared-stands-alone',
      severity: 'error',
      comment: 'shared imports neither api nor worker.',
      from: { path: '^src/shared/' },
      to: { path: '^src/(api|worker)/' },
    },
    {
      name: 'only-tests-import-test-support',
      severity: 'error',
      from: { pathNot: '^test/' },
      to: { path: '^test/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|bench/results|node_modules)/' },
  },
};

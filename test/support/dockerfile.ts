/**
 * Just enough of the Dockerfile syntax to read this repo's Dockerfile in tests: instructions
 * (continuation lines joined, comments dropped), global ARG defaults substituted into FROM, and
 * the exec form of CMD/HEALTHCHECK. Not a general Dockerfile parser: anything it does not know
 * makes it throw, so a test never checks a Dockerfile it misread.
 */

export interface Instruction {
  keyword: string;
  /** The rest of the instruction, continuation lines joined with a space. */
  args: string;
}

export interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

export interface Dockerfile {
  stages: Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (/^\s*#/.test(line)) continue; // comments (and parser directives), also inside a continuation
    if (line.trim() === '' && pending === '') continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    const full = `${pending}${line.trim()}`.trim();
    pending = '';
    if (full === '') continue;
    const match = /^([A-Za-z]+)\s+(.*)$/.exec(full);
    if (!match) throw new Error(`Dockerfile: cannot read instruction ${JSON.stringify(full)}`);
    instructions.push({ keyword: match[1]!.toUpperCase(), args: match[2]! });
  }

  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'FROM') {
      const from = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args);
      if (!from) throw new Error(`Dockerfile: cannot read FROM ${instruction.args}`);
      const image = from[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced: string | undefined, bare: string | undefined) => {
        const name = (braced ?? bare)!;
        const value = globalArgs.get(name);
        if (value === undefined) throw new Error(`Dockerfile: FROM uses ARG ${name}, which has no default`);
        return value;
      });
      stages.push({ image, name: from[2], instructions: [] });
      continue;
    }
    const stage = stages.at(-1);
    if (!stage) {
      if (instruction.keyword !== 'ARG') throw new Error(`Dockerfile: ${instruction.keyword} before the first FROM`);
      const [name, ...value] = instruction.args.split('=');
      if (value.length > 0) globalArgs.set(name!.trim(), value.join('=').trim());
      continue;
    }
    stage.instructions.push(instruction);
  }
  return { stages };
}

/** The JSON array of an exec-form instruction (`CMD ["node", "x.js"]`), or undefined in shell form. */
export function execForm(args: string): string[] | undefined {
  if (!args.trim().startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(args);
  if (!Array.isArray(parsed) || !parsed.every((item) => typeof item === 'string')) {
    throw new Error(`Dockerfile: not a JSON array of strings: ${args}`);
  }
  return parsed;
}

/** `HEALTHCHECK [--option=value ...] CMD ...`: its options and exec-form command. */
export function healthcheckOf(stage: Stage): { options: Record<string, string>; command: string[] } | undefined {
  const instruction = stage.instructions.findLast((candidate) => candidate.keyword === 'HEALTHCHECK');
  if (!instruction) return undefined;
  const match = /^((?:--[\w-]+=\S+\s+)*)CMD\s+(.*)$/.exec(instruction.args);
  if (!match) throw new Error(`Dockerfile: cannot read HEALTHCHECK ${instruction.args}`);
  const options = Object.fromEntries(
    match[1]!
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map((option) => option.slice(2).split('=') as [string, string]),
  );
  const command = execForm(match[2]!);
  if (!command) throw new Error('Dockerfile: HEALTHCHECK CMD is not in exec form');
  return { options, command };
}

/** The variables of a stage's ENV instructions (`ENV A=1 B=2` form). */
export function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const instruction of stage.instructions.filter((candidate) => candidate.keyword === 'ENV')) {
    for (const pair of instruction.args.split(/\s+/)) {
      const [name, ...value] = pair.split('=');
      if (value.length === 0) throw new Error(`Dockerfile: use ENV NAME=value, not ${instruction.args}`);
      env[name!] = value.join('=').replace(/^"(.*)"$/, '$1');
    }
  }
  return env;
}

export function instructionsOf(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((instruction) => instruction.keyword === keyword);
}

/** Whether a .dockerignore (its text) keeps `path`, relative to the context, out of the build
 *  context: Docker's rules as far as this repo uses them (last match wins, `!` re-includes, a
 *  directory's rule covers what is inside it, `*` stays within one path segment). */
export function dockerIgnored(dockerignore: string, path: string): boolean {
  const rules = dockerignore
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  let ignored = false;
  for (const rule of rules) {
    const negated = rule.startsWith('!');
    const pattern = (negated ? rule.slice(1) : rule).replace(/^\/+|\/+$/g, '');
    if (/[?[\]\\]|\*\*/.test(pattern)) throw new Error(`.dockerignore: the tests do not read the pattern ${rule}`);
    const regex = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}(/.*)?$`);
    if (regex.test(path)) ignored = !negated;
  }
  return ignored;
}

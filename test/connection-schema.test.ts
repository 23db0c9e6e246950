import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LABEL_TYPES,
  MAX_DESCRIPTION_LENGTH,
  MAX_NAME_LENGTH,
  MAX_PROPERTIES,
  PROPERTY_TYPES,
  SCHEMA_RULES,
  validateSchema,
  type PropertyType,
  type SchemaProperty,
} from '../src/shared/connection-schema.js';
import { createRedis, type RedisClient } from '../src/shared/redis.js';
import { Subscriber } from '../src/shared/subscriber.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { createApiContext, silentLog, type ApiContext } from './support/context.js';
import { pollUntil } from './support/wait.js';

/**
 * The schema rules (src/shared/connection-schema.ts), as properties: every schema the validator
 * accepts survives a round trip through the API, and every mutation that breaks one rule of
 * SCHEMA_RULES is refused with that rule's code, alone. The generator and the mutations are
 * written from the rules' checks; the connection flow itself: test/connections.test.ts.
 */

const CONNECTIONS = '/v1.0/external/connections';
const SCHEMA_ODATA_TYPE = '#microsoft.graph.externalConnectors.schema';
const STRING_TYPES: readonly PropertyType[] = ['string', 'stringCollection'];
const NON_STRING_TYPES = PROPERTY_TYPES.filter((type) => !STRING_TYPES.includes(type));
const FLAGS = ['isSearchable', 'isRetrievable', 'isQueryable', 'isRefinable', 'isExactMatchRequired'] as const satisfies readonly (keyof SchemaProperty)[];
const LABELS = Object.keys(LABEL_TYPES);

/** A property as a client sends it: description is a property member the rules accept. */
type Property = SchemaProperty & { description?: string };
interface Schema {
  '@odata.type'?: string;
  baseType: 'microsoft.graph.externalItem';
  properties: Property[];
}

// ---- the valid schema: every rule obeyed ----

const lower = (text: string) => text.toLowerCase();
/** Names and aliases: 1 to 32 ASCII letters and digits, often short, sometimes the longest, now
 *  and then an Object.prototype member (a rule keyed by a plain object would trip on it), a label
 *  or a word the rules use. */
const identifier = fc.oneof(
  { weight: 8, arbitrary: fc.stringMatching(/^[A-Za-z0-9]{1,10}$/) },
  { weight: 1, arbitrary: fc.stringMatching(new RegExp(`^[A-Za-z0-9]{${MAX_NAME_LENGTH}}$`)) },
  { weight: 1, arbitrary: fc.constantFrom('constructor', 'toString', 'hasOwnProperty', 'valueOf', 'proto', 'title', 'Name', 'TYPE', '0') },
);
const description = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: MAX_DESCRIPTION_LENGTH, unit: 'binary' }).map((text) => text.slice(0, MAX_DESCRIPTION_LENGTH)) },
  { weight: 1, arbitrary: fc.string({ minLength: MAX_DESCRIPTION_LENGTH, maxLength: MAX_DESCRIPTION_LENGTH }) },
);
/** A flag absent, false or true; the rules below turn a true they forbid into false. */
const flag = fc.constantFrom(undefined, false, true);
const propertyDraft = fc.record({
  type: fc.constantFrom(...PROPERTY_TYPES),
  isSearchable: flag,
  isRetrievable: flag,
  isQueryable: flag,
  isRefinable: flag,
  isExactMatchRequired: flag,
  description: fc.option(description, { nil: undefined }),
  /** Whether a property without labels (aliases) says so with an empty array. */
  emptyLabels: fc.boolean(),
  emptyAliases: fc.boolean(),
});
type PropertyDraft = typeof propertyDraft extends fc.Arbitrary<infer T> ? T : never;

/** Sets `key` only when there is a value: the schema never carries an undefined member. */
function put<K extends keyof Property>(property: Property, key: K, value: Property[K] | undefined): void {
  if (value !== undefined) property[key] = value;
}

function propertyOf(name: string, draft: PropertyDraft, labels: string[], aliases: string[]): Property {
  const { type } = draft;
  const stringType = STRING_TYPES.includes(type);
  // SearchableShouldBeOfTypeString
  const isSearchable = draft.isSearchable && !stringType ? false : draft.isSearchable;
  // RefinerShouldNotBeSearchable, RefinerShouldNotBeOfType
  const isRefinable = draft.isRefinable && (isSearchable || type === 'boolean') ? false : draft.isRefinable;
  // ExactMatchShouldBeOfNonSearchableString
  const isExactMatchRequired = draft.isExactMatchRequired && (isSearchable || !stringType) ? false : draft.isExactMatchRequired;
  // LabeledPropertyShouldBeRetrievable
  const isRetrievable = labels.length > 0 ? true : draft.isRetrievable;
  const property: Property = { name, type };
  put(property, 'isSearchable', isSearchable);
  put(property, 'isRetrievable', isRetrievable);
  put(property, 'isQueryable', draft.isQueryable);
  put(property, 'isRefinable', isRefinable);
  put(property, 'isExactMatchRequired', isExactMatchRequired);
  put(property, 'description', draft.description);
  if (labels.length > 0 || draft.emptyLabels) property.labels = labels;
  if (aliases.length > 0 || draft.emptyAliases) property.aliases = aliases;
  return property;
}

const MAX_ALIASES = 6;
/** A schema that obeys every rule: 1 to 8 properties (now and then the most there may be), names
 *  and aliases unique together without case, flags only where their rules allow them, each label
 *  at most once, on a retrievable property of the label's type. */
const validSchema: fc.Arbitrary<Schema> = fc
  // withCrossShrink: a failure at the most properties still shrinks to a few.
  .oneof({ withCrossShrink: true }, { weight: 15, arbitrary: fc.integer({ min: 1, max: 8 }) }, { weight: 1, arbitrary: fc.constant(MAX_PROPERTIES) })
  .chain((count) =>
    fc.record({
      // PropertyNameNotUnique, AliasNotUnique: names and aliases drawn together, unique without case.
      identifiers: fc.uniqueArray(identifier, { minLength: count, maxLength: count + MAX_ALIASES, selector: lower }),
      drafts: fc.array(propertyDraft, { minLength: count, maxLength: count }),
      aliasOwners: fc.array(fc.nat(), { minLength: MAX_ALIASES, maxLength: MAX_ALIASES }),
      labelOwners: fc.array(fc.option(fc.nat(), { nil: undefined }), { minLength: LABELS.length, maxLength: LABELS.length }),
      // ODataTypeNotSupported: with or without @odata.type, written with or without its #.
      annotated: fc.constantFrom(undefined, SCHEMA_ODATA_TYPE, SCHEMA_ODATA_TYPE.slice(1)),
    }),
  )
  .map(({ identifiers, drafts, aliasOwners, labelOwners, annotated }) => {
    const names = identifiers.slice(0, drafts.length);
    const aliases = names.map((): string[] => []);
    identifiers.slice(drafts.length).forEach((alias, index) => aliases[aliasOwners[index]! % names.length]!.push(alias));
    // LabelUsedMoreThanOnce, LabelShouldBeOfType: a label, if used, on one property of its type.
    const labels = names.map((): string[] => []);
    LABELS.forEach((label, index) => {
      const owner = labelOwners[index];
      const ofType = drafts.flatMap((draft, at) => (draft.type === LABEL_TYPES[label] ? [at] : []));
      if (owner !== undefined && ofType.length > 0) labels[ofType[owner % ofType.length]!]!.push(label);
    });
    const properties = drafts.map((draft, index) => propertyOf(names[index]!, draft, labels[index]!, aliases[index]!));
    const schema: Schema = { baseType: 'microsoft.graph.externalItem', properties };
    return annotated ? { '@odata.type': annotated, ...schema } : schema;
  });

// ---- the mutations: each breaks one rule, at one place ----

/** A broken schema: the body, where the rule is broken (the violation's target), what its
 *  message must name. */
interface Broken {
  body: unknown;
  target: string;
  mentions: string[];
}
/** Breaks one rule of a valid schema (a copy of its own to change), choosing with `picks`;
 *  undefined when this schema has nothing to break that rule with (an update rule needs a
 *  property with the right flags). */
type Mutation = (schema: Schema, picks: readonly [number, number, number]) => Broken | undefined;
/** An update mutation is checked against the valid schema as the connection's provisioned one. */
interface MutationCase {
  update?: true;
  mutate: Mutation;
}

const at = <T>(items: readonly T[], pick: number): T => items[pick % items.length]!;
const quoted = (text: string) => `'${text}'`;
const swapCase = (text: string) => text.replace(/[A-Za-z]/g, (letter) => (letter === letter.toLowerCase() ? letter.toUpperCase() : letter.toLowerCase()));
/** A value that stands for "leave the member out". */
const MISSING = Symbol('missing');
function setOrDelete(record: Record<string, unknown>, key: string, value: unknown): void {
  if (value === MISSING) delete record[key];
  else record[key] = value;
}
const asRecord = (property: Property) => property as unknown as Record<string, unknown>;

/** A name no property or alias of the schema has, compared without case. */
function freshName(schema: Schema, stem = 'fresh'): string {
  const used = new Set(schema.properties.flatMap(({ name, aliases = [] }) => [name, ...aliases].map(lower)));
  let n = 0;
  while (used.has(`${stem}${n}`)) n += 1;
  return `${stem}${n}`;
}

/** Appends a property; when the schema is full, first removes one not named in `keep` (so the
 *  count stays in range and the new property still comes last). */
function append(schema: Schema, property: Property, keep: string[] = []): void {
  if (schema.properties.length >= MAX_PROPERTIES) {
    const removable = schema.properties.findIndex(({ name }) => !keep.includes(name));
    schema.properties.splice(removable, 1);
  }
  schema.properties.push(property);
}

/** Changes a property's type, dropping the labels of another type (LabelShouldBeOfType). */
function retype(property: Property, type: PropertyType): void {
  property.type = type;
  if (property.labels) property.labels = property.labels.filter((label) => LABEL_TYPES[label] === type);
}

/** Leaves a flag out or sets it false: the two ways of not having it. */
const unset = (property: Property, key: (typeof FLAGS)[number], pick: number) => setOrDelete(asRecord(property), key, pick % 2 === 0 ? MISSING : false);

const MUTATIONS: Record<string, MutationCase> = {
  SchemaNotAnObject: {
    mutate: (schema, [a]) => ({ body: at<unknown>([null, [schema], JSON.stringify(schema), 42, true, schema.properties], a), target: '', mentions: [] }),
  },
  SchemaMemberNotSupported: {
    mutate: (schema, [a, b]) => {
      const key = at(['id', 'name', 'description', 'Properties', 'BaseType', '@odata.context', 'properties ', 'value'], a);
      return { body: { ...schema, [key]: at<unknown>([null, 'x', [], {}], b) }, target: key, mentions: [quoted(key)] };
    },
  },
  ODataTypeNotSupported: {
    mutate: (schema, [a]) => {
      const value = at<unknown>(['#microsoft.graph.externalConnectors.externalConnection', '#microsoft.graph.schema', '#Microsoft.Graph.ExternalConnectors.Schema', '', null, 42, ['#microsoft.graph.externalConnectors.schema']], a);
      return { body: { ...schema, '@odata.type': value }, target: '@odata.type', mentions: ['@odata.type', JSON.stringify(value)] };
    },
  },
  BaseTypeNotSupported: {
    mutate: (schema, [a]) => {
      const body: Record<string, unknown> = { ...schema };
      setOrDelete(body, 'baseType', at<unknown>(['microsoft.graph.externalitem', 'microsoft.graph.externalConnectors.externalItem', 'externalItem', ' microsoft.graph.externalItem', '', null, 42, MISSING], a));
      return { body, target: 'baseType', mentions: ['baseType'] };
    },
  },
  PropertiesCountOutOfRange: {
    mutate: (schema, [a]) => {
      const body: Record<string, unknown> = { ...schema };
      const variant = a % 4;
      if (variant === 0) body.properties = [];
      if (variant === 1) {
        const properties = [...schema.properties];
        while (properties.length <= MAX_PROPERTIES) properties.push({ name: freshName({ ...schema, properties }), type: 'int64' });
        body.properties = properties;
      }
      if (variant === 2) delete body.properties;
      if (variant === 3) body.properties = at<unknown>([{}, 'properties', null, schema.properties[0]], a >> 2);
      return { body, target: 'properties', mentions: [String(MAX_PROPERTIES)] };
    },
  },
  PropertyNotAnObject: {
    mutate: (schema, [a, b]) => {
      const index = a % schema.properties.length;
      const property = schema.properties[index]!;
      (schema.properties as unknown[])[index] = at<unknown>([null, property.name, [property], 7, true], b);
      return { body: schema, target: `properties[${index}]`, mentions: [`properties[${index}]`] };
    },
  },
  PropertyMemberNotSupported: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      const key = at(['isSortable', 'IsSearchable', 'label', 'alias', 'id', 'rankingHint', 'Name', 'descriptions'], b);
      asRecord(property)[key] = at<unknown>([true, 'x', null], c);
      return { body: schema, target: property.name, mentions: [quoted(property.name), quoted(key)] };
    },
  },
  PropertyNameInvalid: {
    mutate: (schema, [a, b]) => {
      const index = a % schema.properties.length;
      const name = at<unknown>(['', 'x'.repeat(MAX_NAME_LENGTH + 1), 'has space', 'ünïcode', 'a-b', 'a_b', 'abc\n', 'ab\u0000', 42, null, MISSING], b);
      setOrDelete(asRecord(schema.properties[index]!), 'name', name);
      return { body: schema, target: `properties[${index}]`, mentions: [`properties[${index}]`] };
    },
  },
  PropertyTypeNotSupported: {
    mutate: (schema, [a, b]) => {
      const property = at(schema.properties, a);
      setOrDelete(asRecord(property), 'type', at<unknown>(['String', 'int32', 'dateTimeOffset', 'principal', 'stringcollection', '', 7, null, MISSING], b));
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  PropertyAttributeNotBoolean: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      const key = at(FLAGS, b);
      asRecord(property)[key] = at<unknown>(['true', 'false', 1, 0, null, []], c);
      return { body: schema, target: property.name, mentions: [quoted(property.name), key] };
    },
  },
  PropertyDescriptionTooLong: {
    mutate: (schema, [a, b]) => {
      const property = at(schema.properties, a);
      asRecord(property).description = at<unknown>(['d'.repeat(MAX_DESCRIPTION_LENGTH + 1), 'é'.repeat(1000), 42, null, ['d']], b);
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  AliasInvalid: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      if (b % 4 === 0) asRecord(property).aliases = at<unknown>([property.name.slice(0, 1), null, {}], c);
      else (property as { aliases: unknown[] }).aliases = [...(property.aliases ?? []), at<unknown>(['', 'x'.repeat(MAX_NAME_LENGTH + 1), 'a b', 'a-b', 'ä', 7, null], c)];
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  LabelNotSupported: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      if (b % 4 === 0) asRecord(property).labels = at<unknown>(['title', null, {}], c);
      else (property as { labels: unknown[] }).labels = [...(property.labels ?? []), at<unknown>(['Title', 'description', 'fileSize', '', 'toString', '__proto__', 7, null], c)];
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  PropertyNameNotUnique: {
    mutate: (schema, [a, b, c]) => {
      const original = at(schema.properties, a);
      const name = b % 2 === 0 ? original.name : swapCase(original.name);
      append(schema, { name, type: at(PROPERTY_TYPES, c) }, [original.name]);
      return { body: schema, target: name, mentions: [quoted(name)] };
    },
  },
  AliasNotUnique: {
    mutate: (schema, [a, b, c]) => {
      const { properties } = schema;
      const owned = properties.flatMap(({ aliases = [] }, owner) => aliases.map((alias) => ({ alias, owner })));
      let alias: string;
      let index: number;
      if (b % 3 === 2 && owned.length > 0) {
        // Another alias, given again to its own property or one after it (the second use is refused).
        const taken = at(owned, c);
        alias = taken.alias;
        index = taken.owner + (a % (properties.length - taken.owner));
      } else {
        // A property name: another property's, or its own.
        index = a % properties.length;
        alias = b % 3 === 1 ? properties[index]!.name : at(properties, c).name;
      }
      alias = c % 2 === 0 ? alias : swapCase(alias);
      const property = properties[index]!;
      property.aliases = [...(property.aliases ?? []), alias];
      return { body: schema, target: property.name, mentions: [quoted(property.name), quoted(alias)] };
    },
  },
  SearchableShouldBeOfTypeString: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      const type = at(NON_STRING_TYPES, b);
      retype(property, type);
      property.isSearchable = true;
      unset(property, 'isRefinable', c);
      unset(property, 'isExactMatchRequired', c >> 1);
      return { body: schema, target: property.name, mentions: [quoted(property.name), quoted(type)] };
    },
  },
  RefinerShouldNotBeSearchable: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      if (!STRING_TYPES.includes(property.type)) retype(property, at(STRING_TYPES, b));
      property.isSearchable = true;
      property.isRefinable = true;
      unset(property, 'isExactMatchRequired', c);
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  RefinerShouldNotBeOfType: {
    mutate: (schema, [a, , c]) => {
      const property = at(schema.properties, a);
      retype(property, 'boolean');
      property.isRefinable = true;
      unset(property, 'isSearchable', c);
      unset(property, 'isExactMatchRequired', c >> 1);
      return { body: schema, target: property.name, mentions: [quoted(property.name), 'Boolean'] };
    },
  },
  ExactMatchShouldBeOfNonSearchableString: {
    mutate: (schema, [a, b, c]) => {
      const property = at(schema.properties, a);
      if (b % 2 === 0) {
        // Searchable text.
        if (!STRING_TYPES.includes(property.type)) retype(property, at(STRING_TYPES, c));
        property.isSearchable = true;
        unset(property, 'isRefinable', c >> 1);
      } else {
        // Not text.
        retype(property, at(NON_STRING_TYPES, c));
        unset(property, 'isSearchable', c >> 3);
        if (property.type === 'boolean') unset(property, 'isRefinable', c >> 1);
      }
      property.isExactMatchRequired = true;
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  // Its message names the label and every property it marks.
  LabelUsedMoreThanOnce: {
    mutate: (schema, [, b, c]) => {
      const label = at(LABELS, b);
      const owner = schema.properties.find(({ labels = [] }) => labels.includes(label));
      if (owner && c % 2 === 0) {
        // Twice on the same property.
        owner.labels = [...owner.labels!, label];
        return { body: schema, target: owner.name, mentions: [quoted(label), quoted(owner.name)] };
      }
      // On a new property too (twice on it when no property had it).
      const name = freshName(schema);
      append(schema, { name, type: LABEL_TYPES[label]!, isRetrievable: true, labels: owner ? [label] : [label, label] }, owner ? [owner.name] : []);
      return { body: schema, target: name, mentions: [quoted(label), quoted(name), ...(owner ? [quoted(owner.name)] : [])] };
    },
  },
  LabelShouldBeOfType: {
    mutate: (schema, [a, b]) => {
      const property = at(schema.properties, a);
      const label = at(
        LABELS.filter((candidate) => LABEL_TYPES[candidate] !== property.type),
        b,
      );
      // Taken from any property that has it (LabelUsedMoreThanOnce), given to this one.
      for (const other of schema.properties) if (other.labels) other.labels = other.labels.filter((used) => used !== label);
      property.labels = [...(property.labels ?? []), label];
      property.isRetrievable = true;
      return { body: schema, target: property.name, mentions: [quoted(property.name), quoted(label)] };
    },
  },
  LabeledPropertyShouldBeRetrievable: {
    mutate: (schema, [a, b, c]) => {
      const labelled = schema.properties.filter(({ labels = [] }) => labels.length > 0);
      if (labelled.length > 0) {
        const property = at(labelled, a);
        unset(property, 'isRetrievable', c);
        return { body: schema, target: property.name, mentions: [quoted(property.name)] };
      }
      const label = at(LABELS, b);
      const property: Property = { name: freshName(schema), type: LABEL_TYPES[label]!, labels: [label] };
      unset(property, 'isRetrievable', c);
      append(schema, property);
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  PropertyCannotBeRemoved: {
    update: true,
    mutate: (schema, [a, b]) => {
      const index = a % schema.properties.length;
      const property = schema.properties[index]!;
      const removed = property.name;
      if (b % 2 === 0) {
        // Renamed (not a change of case, which keeps the property): the old one is gone.
        property.name = freshName(schema, 'renamed');
      } else {
        if (schema.properties.length === 1) schema.properties.push({ name: freshName(schema), type: 'string' });
        schema.properties.splice(index, 1);
      }
      return { body: schema, target: removed, mentions: [quoted(removed)] };
    },
  },
  PropertyTypeCannotChange: {
    update: true,
    mutate: (schema, [a, b]) => {
      const property = at(schema.properties, a);
      const before = property.type;
      const types = PROPERTY_TYPES.filter(
        (type) =>
          type !== before &&
          (!property.isSearchable || STRING_TYPES.includes(type)) &&
          (!property.isExactMatchRequired || STRING_TYPES.includes(type)) &&
          (!property.isRefinable || type !== 'boolean'),
      );
      const type = at(types, b);
      retype(property, type);
      return { body: schema, target: property.name, mentions: [quoted(property.name), quoted(before), quoted(type)] };
    },
  },
  RefinerCannotChange: {
    update: true,
    mutate: (schema, [a, b]) => {
      const count = schema.properties.length;
      const rotated = schema.properties.map((_, offset) => schema.properties[(a + offset) % count]!);
      const property = rotated.find(({ isRefinable, type }) => isRefinable || type !== 'boolean');
      if (!property) return undefined;
      if (property.isRefinable) {
        unset(property, 'isRefinable', b);
      } else {
        property.isRefinable = true;
        unset(property, 'isSearchable', b);
      }
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
  RetrievableCannotBeRemoved: {
    update: true,
    mutate: (schema, [a, b]) => {
      const count = schema.properties.length;
      const property = schema.properties.map((_, offset) => schema.properties[(a + offset) % count]!).find(({ isRetrievable }) => isRetrievable);
      if (!property) return undefined;
      unset(property, 'isRetrievable', b);
      // A labelled property must stay retrievable: its labels go too (labels may change).
      delete property.labels;
      return { body: schema, target: property.name, mentions: [quoted(property.name)] };
    },
  },
};

const picks = fc.tuple(fc.nat(), fc.nat(), fc.nat());
/** Applies a rule's mutation to a copy of the schema. */
function breakRule(code: string, schema: Schema, chosen: readonly [number, number, number]): Broken | undefined {
  const mutation = MUTATIONS[code];
  if (!mutation) throw new Error(`no mutation for rule ${code}`);
  return mutation.mutate(structuredClone(schema), chosen);
}
/** What the connection has provisioned when the rule's mutation is checked: the valid schema for
 *  an update rule, nothing for the others. */
const provisionedFor = (code: string, schema: Schema) => (MUTATIONS[code]?.update ? withoutAnnotation(schema) : undefined);
function withoutAnnotation({ '@odata.type': _annotation, ...schema }: Schema) {
  return schema;
}

// ---- the properties, on the validator ----

describe('the schema validator', () => {
  it('accepts every schema that obeys the rules, as a first schema and as an update of itself, and gives it back without @odata.type', () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(validSchema, (schema) => {
        const expected = withoutAnnotation(schema);
        for (const provisioned of [undefined, expected]) {
          const result = validateSchema(structuredClone(schema), provisioned);
          expect(result.valid ? [] : result.violations).toEqual([]);
          expect(result.valid && result.schema).toStrictEqual(expected);
        }
        // What the generator reached, to check below that it covers the rules' ground.
        if (schema.properties.length === MAX_PROPERTIES) seen.add('most properties');
        if ('@odata.type' in schema) seen.add(`@odata.type ${schema['@odata.type']}`);
        for (const property of schema.properties) {
          seen.add(`type ${property.type}`);
          for (const key of FLAGS) if (property[key]) seen.add(`${key} on ${property.type}`);
          for (const label of property.labels ?? []) seen.add(`label ${label}`);
          if (property.aliases?.length) seen.add('aliases');
          if (property.description?.length === MAX_DESCRIPTION_LENGTH) seen.add('longest description');
          if (property.name.length === MAX_NAME_LENGTH) seen.add('longest name');
        }
      }),
      { numRuns: 400 },
    );
    const expected = [
      'most properties',
      `@odata.type ${SCHEMA_ODATA_TYPE}`,
      `@odata.type ${SCHEMA_ODATA_TYPE.slice(1)}`,
      'aliases',
      'longest description',
      'longest name',
      ...PROPERTY_TYPES.map((type) => `type ${type}`),
      ...LABELS.map((label) => `label ${label}`),
      ...STRING_TYPES.flatMap((type) => [`isSearchable on ${type}`, `isExactMatchRequired on ${type}`]),
      ...PROPERTY_TYPES.filter((type) => type !== 'boolean').map((type) => `isRefinable on ${type}`),
    ];
    expect(expected.filter((reached) => !seen.has(reached))).toEqual([]);
  });

  it('has a mutation for every rule of SCHEMA_RULES, and none for a rule that is not there', () => {
    const codes = SCHEMA_RULES.map(({ code }) => code);
    expect(new Set(codes).size).toBe(codes.length);
    expect(Object.keys(MUTATIONS).sort()).toEqual([...codes].sort());
  });

  describe.each(SCHEMA_RULES.map(({ code }) => code))('%s', (code) => {
    it('refuses a valid schema broken by that rule alone with that rule, at the place broken', () => {
      fc.assert(
        fc.property(validSchema, picks, (schema, chosen) => {
          const broken = breakRule(code, schema, chosen);
          fc.pre(broken !== undefined);
          const { body, target, mentions } = broken;
          const provisioned = provisionedFor(code, schema);
          if (provisioned) {
            // An update mutation breaks nothing but the update rule: on its own, the schema is valid.
            const alone = validateSchema(structuredClone(body));
            expect(alone.valid ? [] : alone.violations).toEqual([]);
          }
          const result = validateSchema(body, provisioned);
          const violations = result.valid ? [] : result.violations;
          expect(violations, `the violations of ${JSON.stringify(body)}`).toEqual([{ code, target, message: expect.any(String) as string }]);
          for (const mention of mentions) expect(violations[0]!.message).toContain(mention);
        }),
        { numRuns: 150 },
      );
    });
  });
});

// ---- the properties, through the API on a real Redis, with a worker that provisions ----

describe('schemas through the API', () => {
  let ctx: ApiContext;
  let workerRedis: RedisClient;
  let subscriber: Subscriber;
  let worker: OperationWorker | undefined;
  beforeAll(async () => {
    ctx = await createApiContext();
    workerRedis = createRedis({ url: ctx.config.REDIS_URL, role: 'consumer' });
    subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
    // Provisions every schema at once (the update rules need a provisioned schema).
    worker = createWorker({
      connection: workerRedis,
      store: ctx.store,
      queue: ctx.queue,
      connections: ctx.connections,
      processor: async () => {},
      config: ctx.config,
      log: silentLog,
      subscriber,
    });
    await worker.hearingCancels;
  });
  afterAll(async () => {
    await worker?.close(2000);
    await subscriber?.close();
    await workerRedis?.quit();
    await ctx?.close();
  });

  let sequence = 0;
  /** A connection of its own per run, shrinking included. */
  async function freshConnection(): Promise<string> {
    const id = `schema${++sequence}x${Date.now().toString(36)}`;
    const response = await ctx.post(CONNECTIONS, { id, name: `Connection ${id}` });
    expect(response.status).toBe(201);
    return id;
  }
  const patchSchema = (id: string, body: unknown) =>
    ctx.request(`${CONNECTIONS}/${id}/schema`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  /** The operation a 202 names, once it has ended (Prefer: wait answers as soon as it ends). */
  async function provisioned(response: Response): Promise<void> {
    expect(response.status).toBe(202);
    const path = new URL(response.headers.get('location')!).pathname;
    const status = await pollUntil(
      async () => {
        const operation = (await (await ctx.request(path, { headers: { prefer: 'wait=5' } })).json()) as { status: string };
        return operation.status === 'inprogress' ? undefined : operation.status;
      },
      { timeoutMs: 15_000, what: `operation ${path} never ended` },
    );
    expect(status).toBe('completed');
  }
  /** The 400 of a broken schema: InvalidRequest, the first violation's message, its rule in
   *  innerError.code, and every violation the validator finds in details. */
  async function expectRefused(response: Response, code: string, body: unknown, provisionedSchema?: Schema): Promise<void> {
    const validation = validateSchema(structuredClone(body), provisionedSchema && withoutAnnotation(provisionedSchema));
    const violations = validation.valid ? [] : validation.violations;
    const answer = await response.text();
    expect(response.status, answer).toBe(400);
    const { error } = JSON.parse(answer) as { error: { code: string; message: string; details: unknown[]; innerError: { code: string } } };
    expect(error.code).toBe('InvalidRequest');
    expect(error.innerError.code).toBe(code);
    expect(error.message).toBe(violations[0]?.message);
    expect(error.details).toEqual(violations);
  }

  it('answers every valid schema with 202 and an operation Location, and reads it back as it was sent, annotated with the full @odata.type', async () => {
    await fc.assert(
      fc.asyncProperty(validSchema, async (schema) => {
        const id = await freshConnection();
        const response = await patchSchema(id, schema);
        expect(response.status, await response.clone().text()).toBe(202);
        expect(new URL(response.headers.get('location')!).pathname).toMatch(new RegExp(`^${CONNECTIONS}/${id}/operations/[0-9a-f-]{36}$`));
        const read = await ctx.request(`${CONNECTIONS}/${id}/schema`);
        expect(read.status).toBe(200);
        expect(await read.json()).toStrictEqual({ ...schema, '@odata.type': SCHEMA_ODATA_TYPE });
      }),
      { numRuns: 20 },
    );
  });

  const firstSchemaRules = SCHEMA_RULES.map(({ code }) => code).filter((code) => !MUTATIONS[code]?.update);
  it.each(firstSchemaRules)('answers a first schema that breaks %s with 400 InvalidRequest naming it, and keeps nothing', async (code) => {
    await fc.assert(
      fc.asyncProperty(validSchema, picks, async (schema, chosen) => {
        const broken = breakRule(code, schema, chosen)!;
        const id = await freshConnection();
        await expectRefused(await patchSchema(id, broken.body), code, broken.body);
        expect((await ctx.request(`${CONNECTIONS}/${id}/schema`)).status).toBe(404);
      }),
      { numRuns: 3 },
    );
  });

  const updateRules = SCHEMA_RULES.map(({ code }) => code).filter((code) => MUTATIONS[code]?.update);
  it.each(updateRules)('answers an update that breaks %s of the provisioned schema with 400 InvalidRequest naming it', async (code) => {
    await fc.assert(
      fc.asyncProperty(validSchema, picks, async (schema, chosen) => {
        const broken = breakRule(code, schema, chosen);
        fc.pre(broken !== undefined);
        const id = await freshConnection();
        await provisioned(await patchSchema(id, schema));
        await expectRefused(await patchSchema(id, broken.body), code, broken.body, schema);
        // The provisioned schema is still the one read back.
        expect(await (await ctx.request(`${CONNECTIONS}/${id}/schema`)).json()).toStrictEqual({ ...schema, '@odata.type': SCHEMA_ODATA_TYPE });
      }),
      { numRuns: 3 },
    );
  });
});

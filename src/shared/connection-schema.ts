import { z } from 'zod';

/**
 * The schema of an external connection (Graph's externalConnectors.schema and .property) and
 * the rules it must follow, checked synchronously when a client submits it: SCHEMA_RULES is the
 * one table of them (code, the rule in a sentence, its check), in the order they are checked.
 *
 * Graph publishes these rules in prose, some of it contradictory; where it is silent or
 * ambiguous, the rule says what this service chose (README, "Schema rules"). Graph's own
 * codes are used where it has published one (RefinerShouldNotBeOfType); the others follow its
 * style.
 */

export const PROPERTY_TYPES = [
  'string',
  'int64',
  'double',
  'dateTime',
  'boolean',
  'stringCollection',
  'int64Collection',
  'doubleCollection',
  'dateTimeCollection',
] as const;
export type PropertyType = (typeof PROPERTY_TYPES)[number];

export interface SchemaProperty {
  name: string;
  type: PropertyType;
  isSearchable?: boolean;
  isRetrievable?: boolean;
  isQueryable?: boolean;
  isRefinable?: boolean;
  isExactMatchRequired?: boolean;
  labels?: string[];
  aliases?: string[];
}

export interface ConnectionSchema {
  baseType: 'microsoft.graph.externalItem';
  properties: SchemaProperty[];
}

/** One broken rule: its code (Graph's innerError.code), where, and a sentence naming both. */
export interface SchemaViolation {
  code: string;
  target: string;
  message: string;
}

export type SchemaValidation = { valid: true; schema: ConnectionSchema } | { valid: false; violations: SchemaViolation[] };

const SCHEMA_ODATA_TYPE = '#microsoft.graph.externalConnectors.schema';
/** The annotation as SDKs write it, and as Graph's own examples write it, without the #. */
const SCHEMA_ODATA_TYPE_SPELLINGS = [SCHEMA_ODATA_TYPE, SCHEMA_ODATA_TYPE.slice(1)] as const;
const SCHEMA_ODATA_TYPES = new Set<unknown>(SCHEMA_ODATA_TYPE_SPELLINGS);

/** The shape of a schema as zod, for the OpenAPI document only: the rules (validateSchema) decide
 *  what is accepted, so that every refusal names its rule. */
const documentedShape = z.object({
  '@odata.type': z.enum(SCHEMA_ODATA_TYPE_SPELLINGS).optional(),
  baseType: z.literal('microsoft.graph.externalItem'),
  properties: z
    .array(
      z.object({
        name: z.string(),
        type: z.enum(PROPERTY_TYPES),
        isSearchable: z.boolean().optional(),
        isRetrievable: z.boolean().optional(),
        isQueryable: z.boolean().optional(),
        isRefinable: z.boolean().optional(),
        isExactMatchRequired: z.boolean().optional(),
        labels: z.array(z.string()).optional(),
        aliases: z.array(z.string()).optional(),
      }),
    )
    .min(1)
    .max(128),
});

/** The request and answer body of the schema routes, as documented: what validateSchema checks. */
export const schemaDocumentation = z.unknown().meta({
  id: 'externalConnectors.schema',
  description: 'The rules it must follow are listed in the README (each refusal names its rule in innerError.code).',
  ...withoutDialect(z.toJSONSchema(documentedShape)),
  example: {
    baseType: 'microsoft.graph.externalItem',
    properties: [
      { name: 'ticketTitle', type: 'string', isSearchable: true, isRetrievable: true, labels: ['title'] },
      { name: 'priority', type: 'string', isQueryable: true, isRetrievable: true, isRefinable: true },
      { name: 'assignee', type: 'string', isRetrievable: true, aliases: ['owner'] },
    ],
  },
});

function withoutDialect(schema: Record<string, unknown>): Record<string, unknown> {
  const { $schema: _dialect, ...rest } = schema;
  return rest;
}

/** A label, and the type the property it marks must have. */
export const LABEL_TYPES: Readonly<Record<string, PropertyType>> = {
  title: 'string',
  url: 'string',
  createdBy: 'string',
  lastModifiedBy: 'string',
  authors: 'stringCollection',
  createdDateTime: 'dateTime',
  lastModifiedDateTime: 'dateTime',
  fileName: 'string',
  fileExtension: 'string',
  iconUrl: 'string',
  containerName: 'string',
  containerUrl: 'string',
};

export const MAX_PROPERTIES = 128;
export const MAX_NAME_LENGTH = 32;
export const MAX_DESCRIPTION_LENGTH = 200;
const NAME = /^[A-Za-z0-9]{1,32}$/;
const BASE_TYPE = 'microsoft.graph.externalItem';
const SCHEMA_MEMBERS = new Set(['@odata.type', 'baseType', 'properties']);
const FLAGS = ['isSearchable', 'isRetrievable', 'isQueryable', 'isRefinable', 'isExactMatchRequired'] as const;
const PROPERTY_MEMBERS = new Set(['name', 'type', 'description', 'labels', 'aliases', ...FLAGS]);
const STRING_TYPES: readonly PropertyType[] = ['string', 'stringCollection'];

/** One rule: Graph's innerError.code for it, the rule as a sentence (the README lists these),
 *  and its check, which yields a violation per place that breaks it. */
export interface SchemaRule<Input> {
  code: string;
  rule: string;
  check: (input: Input) => Iterable<Omit<SchemaViolation, 'code'>>;
}

/** What a schema's properties are checked against: the schema, and the one the connection has
 *  provisioned, when it has one (a schema update). */
export interface SchemaChange {
  schema: ConnectionSchema;
  provisioned?: ConnectionSchema | undefined;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const rawProperties = (body: unknown): unknown[] => (isObject(body) && Array.isArray(body.properties) ? body.properties : []);
const propertyObjects = (body: unknown) =>
  rawProperties(body).flatMap((property, index) => (isObject(property) ? [{ property, index }] : []));
/** How a property is named in messages: by its name when it has a usable one. */
const called = (property: Record<string, unknown>, index: number) =>
  typeof property.name === 'string' && property.name !== '' ? `'${property.name}'` : `at properties[${index}]`;
const target = (property: Record<string, unknown>, index: number) =>
  typeof property.name === 'string' && property.name !== '' ? property.name : `properties[${index}]`;
const each = (properties: SchemaProperty[]) => properties.map((property) => ({ property, target: property.name }));

/** The shape: checked first; the other rules read a schema of this shape. */
const SHAPE_RULES: SchemaRule<unknown>[] = [
  {
    code: 'SchemaNotAnObject',
    rule: 'The body is a JSON object.',
    *check(body) {
      if (!isObject(body)) yield { target: '', message: 'The schema must be a JSON object with baseType and properties.' };
    },
  },
  {
    code: 'SchemaMemberNotSupported',
    rule: 'The schema has only baseType, properties and @odata.type.',
    *check(body) {
      if (!isObject(body)) return;
      for (const key of Object.keys(body)) {
        if (!SCHEMA_MEMBERS.has(key)) yield { target: key, message: `Schema member '${key}' is not supported; a schema has baseType and properties.` };
      }
    },
  },
  {
    code: 'ODataTypeNotSupported',
    rule: `@odata.type, when present, is "${SCHEMA_ODATA_TYPE}" (the leading # may be left out).`,
    *check(body) {
      if (isObject(body) && '@odata.type' in body && !SCHEMA_ODATA_TYPES.has(body['@odata.type'])) {
        yield {
          target: '@odata.type',
          message: `@odata.type must be '${SCHEMA_ODATA_TYPE}', not ${JSON.stringify(body['@odata.type'])}.`,
        };
      }
    },
  },
  {
    code: 'BaseTypeNotSupported',
    rule: `baseType is "${BASE_TYPE}".`,
    *check(body) {
      if (isObject(body) && body.baseType !== BASE_TYPE) {
        yield { target: 'baseType', message: `baseType must be '${BASE_TYPE}', not ${JSON.stringify(body.baseType) ?? 'missing'}.` };
      }
    },
  },
  {
    code: 'PropertiesCountOutOfRange',
    rule: `properties is an array of 1 to ${MAX_PROPERTIES} properties.`,
    *check(body) {
      if (!isObject(body)) return;
      const { properties } = body;
      if (!Array.isArray(properties) || properties.length < 1 || properties.length > MAX_PROPERTIES) {
        const found = Array.isArray(properties) ? `${properties.length}` : 'none';
        yield { target: 'properties', message: `A schema must have between 1 and ${MAX_PROPERTIES} properties; it has ${found}.` };
      }
    },
  },
  {
    code: 'PropertyNotAnObject',
    rule: 'Each property is a JSON object.',
    *check(body) {
      for (const [index, property] of rawProperties(body).entries()) {
        if (!isObject(property)) yield { target: `properties[${index}]`, message: `The property at properties[${index}] must be a JSON object.` };
      }
    },
  },
  {
    code: 'PropertyMemberNotSupported',
    rule: `A property has only ${[...PROPERTY_MEMBERS].join(', ')}.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        for (const key of Object.keys(property)) {
          if (!PROPERTY_MEMBERS.has(key)) {
            yield { target: target(property, index), message: `Property ${called(property, index)} has '${key}', which is not a property attribute.` };
          }
        }
      }
    },
  },
  {
    code: 'PropertyNameInvalid',
    rule: `name is 1 to ${MAX_NAME_LENGTH} ASCII letters and digits.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        if (typeof property.name !== 'string' || !NAME.test(property.name)) {
          yield {
            target: `properties[${index}]`,
            message: `The property name ${JSON.stringify(property.name) ?? 'missing'} at properties[${index}] must be 1 to ${MAX_NAME_LENGTH} letters and digits.`,
          };
        }
      }
    },
  },
  {
    code: 'PropertyTypeNotSupported',
    rule: `type is one of ${PROPERTY_TYPES.join(', ')}.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        if (!PROPERTY_TYPES.includes(property.type as PropertyType)) {
          yield {
            target: target(property, index),
            message: `Property ${called(property, index)} has type ${JSON.stringify(property.type) ?? 'missing'}; the types are ${PROPERTY_TYPES.join(', ')}.`,
          };
        }
      }
    },
  },
  {
    code: 'PropertyAttributeNotBoolean',
    rule: `${FLAGS.join(', ')} are JSON booleans when present.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        for (const flag of FLAGS) {
          if (flag in property && typeof property[flag] !== 'boolean') {
            yield { target: target(property, index), message: `Property ${called(property, index)} has ${flag} ${JSON.stringify(property[flag])}; it must be true or false.` };
          }
        }
      }
    },
  },
  {
    code: 'PropertyDescriptionTooLong',
    rule: `description is a string of at most ${MAX_DESCRIPTION_LENGTH} characters when present.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        if ('description' in property && (typeof property.description !== 'string' || property.description.length > MAX_DESCRIPTION_LENGTH)) {
          yield { target: target(property, index), message: `The description of property ${called(property, index)} must be a string of at most ${MAX_DESCRIPTION_LENGTH} characters.` };
        }
      }
    },
  },
  {
    code: 'AliasInvalid',
    rule: `aliases is an array of names of 1 to ${MAX_NAME_LENGTH} ASCII letters and digits when present.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        if (!('aliases' in property)) continue;
        const { aliases } = property;
        const bad: unknown = Array.isArray(aliases) ? aliases.find((alias) => typeof alias !== 'string' || !NAME.test(alias)) : aliases;
        if (!Array.isArray(aliases) || bad !== undefined) {
          yield {
            target: target(property, index),
            message: `Alias ${JSON.stringify(bad)} of property ${called(property, index)} must be 1 to ${MAX_NAME_LENGTH} letters and digits (aliases is an array of them).`,
          };
        }
      }
    },
  },
  {
    code: 'LabelNotSupported',
    rule: `labels is an array of Graph's labels when present: ${Object.keys(LABEL_TYPES).join(', ')}.`,
    *check(body) {
      for (const { property, index } of propertyObjects(body)) {
        if (!('labels' in property)) continue;
        const { labels } = property;
        const bad: unknown = Array.isArray(labels) ? labels.find((label) => typeof label !== 'string' || !Object.hasOwn(LABEL_TYPES, label)) : labels;
        if (!Array.isArray(labels) || bad !== undefined) {
          yield {
            target: target(property, index),
            message: `Label ${JSON.stringify(bad)} of property ${called(property, index)} is not one of ${Object.keys(LABEL_TYPES).join(', ')}.`,
          };
        }
      }
    },
  },
];

/** The rules of a schema of the right shape, over its properties together. */
const PROPERTY_RULES: SchemaRule<ConnectionSchema>[] = [
  {
    code: 'PropertyNameNotUnique',
    rule: 'Property names are unique, compared without case.',
    *check({ properties }) {
      const seen = new Set<string>();
      for (const { name } of properties) {
        if (seen.has(name.toLowerCase())) yield { target: name, message: `Property name '${name}' is used more than once (names are compared without case).` };
        seen.add(name.toLowerCase());
      }
    },
  },
  {
    code: 'AliasNotUnique',
    rule: 'An alias is used once in the schema, and is no property name, compared without case.',
    *check({ properties }) {
      const names = new Set(properties.map(({ name }) => name.toLowerCase()));
      const seen = new Set<string>();
      for (const { property, target } of each(properties)) {
        for (const alias of property.aliases ?? []) {
          const key = alias.toLowerCase();
          if (names.has(key) || seen.has(key)) {
            yield { target, message: `Alias '${alias}' of property '${property.name}' is already a property name or another alias (compared without case).` };
          }
          seen.add(key);
        }
      }
    },
  },
  {
    code: 'SearchableShouldBeOfTypeString',
    rule: 'Only a string or stringCollection property is searchable.',
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        if (property.isSearchable && !STRING_TYPES.includes(property.type)) {
          yield { target, message: `Searchable property '${property.name}' cannot be of type '${property.type}'; only string and stringCollection properties are searchable.` };
        }
      }
    },
  },
  {
    code: 'RefinerShouldNotBeSearchable',
    rule: 'A refinable property is not searchable.',
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        if (property.isRefinable && property.isSearchable) {
          yield { target, message: `Refiner property '${property.name}' cannot be searchable; refinable and searchable exclude each other.` };
        }
      }
    },
  },
  {
    code: 'RefinerShouldNotBeOfType',
    rule: 'A boolean property is not refinable (refiners are string, numeric and date types, and their collections).',
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        if (property.isRefinable && property.type === 'boolean') {
          yield { target, message: `Refiner property '${property.name}' cannot be of type 'Boolean'.` };
        }
      }
    },
  },
  {
    code: 'ExactMatchShouldBeOfNonSearchableString',
    rule: 'isExactMatchRequired is true only on a string or stringCollection property that is not searchable.',
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        if (property.isExactMatchRequired && (property.isSearchable || !STRING_TYPES.includes(property.type))) {
          yield {
            target,
            message: `Property '${property.name}' cannot require an exact match; only a string or stringCollection property that is not searchable can.`,
          };
        }
      }
    },
  },
  {
    code: 'LabelUsedMoreThanOnce',
    rule: 'Each label marks one property, once.',
    *check({ properties }) {
      const markedBy = new Map<string, string>();
      for (const { property, target } of each(properties)) {
        for (const label of property.labels ?? []) {
          const first = markedBy.get(label);
          if (first === undefined) markedBy.set(label, property.name);
          else if (first === property.name) yield { target, message: `Label '${label}' is given twice to property '${first}'; a label marks one property, once.` };
          else yield { target, message: `Label '${label}' is on both '${first}' and '${property.name}'; a label marks one property.` };
        }
      }
    },
  },
  {
    code: 'LabelShouldBeOfType',
    rule: `A labelled property has the label's type (${Object.entries(LABEL_TYPES)
      .map(([label, type]) => `${label}: ${type}`)
      .join(', ')}).`,
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        for (const label of property.labels ?? []) {
          const type = LABEL_TYPES[label];
          if (type !== property.type) {
            yield { target, message: `Property '${property.name}' with label '${label}' must be of type '${type}', not '${property.type}'.` };
          }
        }
      }
    },
  },
  {
    code: 'LabeledPropertyShouldBeRetrievable',
    rule: 'A labelled property is retrievable.',
    *check({ properties }) {
      for (const { property, target } of each(properties)) {
        if ((property.labels?.length ?? 0) > 0 && !property.isRetrievable) {
          yield { target, message: `Property '${property.name}' has a label, so it must be retrievable (isRetrievable: true).` };
        }
      }
    },
  },
];

/** What an update may not change of the schema the connection has provisioned. */
const UPDATE_RULES: SchemaRule<SchemaChange>[] = [
  {
    code: 'PropertyCannotBeRemoved',
    rule: 'An update keeps every provisioned property (to remove one, delete and create the connection again).',
    *check({ schema, provisioned }) {
      const names = new Set(schema.properties.map(({ name }) => name.toLowerCase()));
      for (const { name } of provisioned?.properties ?? []) {
        if (!names.has(name.toLowerCase())) yield { target: name, message: `Provisioned property '${name}' cannot be removed by a schema update.` };
      }
    },
  },
  {
    code: 'PropertyTypeCannotChange',
    rule: 'An update keeps the type of every provisioned property.',
    *check(change) {
      for (const { property, before } of provisionedPairs(change)) {
        if (property.type !== before.type) {
          yield { target: property.name, message: `Property '${property.name}' is provisioned as '${before.type}'; an update cannot make it '${property.type}'.` };
        }
      }
    },
  },
  {
    code: 'RefinerCannotChange',
    rule: 'An update neither adds isRefinable to a provisioned property nor removes it.',
    *check(change) {
      for (const { property, before } of provisionedPairs(change)) {
        if (Boolean(property.isRefinable) !== Boolean(before.isRefinable)) {
          yield { target: property.name, message: `An update cannot ${property.isRefinable ? 'add' : 'remove'} isRefinable on provisioned property '${property.name}'.` };
        }
      }
    },
  },
  {
    code: 'RetrievableCannotBeRemoved',
    rule: 'An update does not remove isRetrievable from a provisioned property.',
    *check(change) {
      for (const { property, before } of provisionedPairs(change)) {
        if (before.isRetrievable && !property.isRetrievable) {
          yield { target: property.name, message: `An update cannot remove isRetrievable from provisioned property '${property.name}'.` };
        }
      }
    },
  },
];

/** Each property of the update that was provisioned before, with what it was. */
function provisionedPairs({ schema, provisioned }: SchemaChange) {
  const before = new Map((provisioned?.properties ?? []).map((property) => [property.name.toLowerCase(), property]));
  return schema.properties.flatMap((property) => {
    const was = before.get(property.name.toLowerCase());
    return was ? [{ property, before: was }] : [];
  });
}

/** Every rule, in the order they are checked (the README's list). */
export const SCHEMA_RULES: readonly SchemaRule<never>[] = [...SHAPE_RULES, ...PROPERTY_RULES, ...UPDATE_RULES];

function run<Input>(rules: SchemaRule<Input>[], input: Input): SchemaViolation[] {
  return rules.flatMap(({ code, check }) => [...check(input)].map((violation) => ({ code, ...violation })));
}

/**
 * Checks a submitted schema against every rule. The shape comes first: a body of the wrong
 * shape is answered with its shape problems only. Then every other rule, and all the problems
 * found are answered together (the first one names the response).
 * `provisioned`: the schema the connection has provisioned, when this is an update.
 */
export function validateSchema(body: unknown, provisioned?: ConnectionSchema): SchemaValidation {
  const shape = run(SHAPE_RULES, body);
  if (shape.length > 0) return { valid: false, violations: shape };
  const { '@odata.type': _annotation, ...schema } = body as ConnectionSchema & { '@odata.type'?: string };
  const violations = [...run(PROPERTY_RULES, schema), ...run(UPDATE_RULES, { schema, provisioned })];
  return violations.length > 0 ? { valid: false, violations } : { valid: true, schema };
}

/**
 * docs/CLI.md, made from the commands themselves: every command that is not hidden, its usage,
 * description, arguments and options with their defaults. `make docs` writes it
 * (scripts/cli-reference.ts) and test/unit/cli-reference.test.ts fails when the file and the
 * commands differ, so the reference cannot drift.
 */
import type { Command } from 'commander';

const escape = (text: string) => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function path(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

function visible(cmd: Command): Command[] {
  return cmd.commands.filter((c) => !(c as Command & { _hidden?: boolean })._hidden).sort((a, b) => a.name().localeCompare(b.name()));
}

function section(cmd: Command, out: string[]): void {
  const name = path(cmd);
  out.push(`## ${name}`, '');
  if (cmd.description()) out.push(cmd.description().replace(/\n/g, ' ').trim(), '');
  out.push('```', `${name} ${cmd.usage()}`.trimEnd(), '```', '');
  const args = cmd.registeredArguments;
  if (args.length > 0) {
    out.push('| argument | |', '|---|---|');
    for (const a of args) out.push(`| \`${a.name()}${a.variadic ? '...' : ''}\`${a.required ? '' : ' (optional)'} | ${escape(a.description || '')} |`);
    out.push('');
  }
  const options = cmd.options.filter((o) => !o.hidden);
  if (options.length > 0) {
    out.push('| option | | default |', '|---|---|---|');
    for (const o of options) {
      const def = o.defaultValueDescription ?? (o.defaultValue === undefined ? '' : JSON.stringify(o.defaultValue));
      out.push(`| \`${o.flags}\`${o.mandatory ? ' (required)' : ''} | ${escape(o.description)} | ${def ? `\`${escape(def)}\`` : ''} |`);
    }
    out.push('');
  }
  const subs = visible(cmd);
  if (subs.length > 0) out.push(`Commands: ${subs.map((c) => `[${c.name()}](#${path(c).replace(/ /g, '-')})`).join(', ')}.`, '');
  for (const sub of subs) section(sub, out);
}

/** The reference of a program, as markdown. */
export function cliReference(program: Command): string {
  const out = ['# ambit command reference', '', '<!-- Made from the commands by `make docs` (scripts/cli-reference.ts); do not edit by hand. -->', ''];
  out.push(program.description(), '');
  out.push(`Commands: ${visible(program).map((c) => `[${c.name()}](#ambit-${c.name()})`).join(', ')}.`, '');
  for (const sub of visible(program)) section(sub, out);
  return `${out.join('\n').trimEnd()}\n`;
}
